"""mmit_fast.data"""
