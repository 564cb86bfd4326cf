"""mmit_fast.models"""
