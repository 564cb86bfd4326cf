"""mmit_fast.interpret"""
