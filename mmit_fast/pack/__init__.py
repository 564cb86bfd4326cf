"""mmit_fast.pack"""
