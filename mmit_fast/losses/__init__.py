"""mmit_fast.losses"""
