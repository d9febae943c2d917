"""isotorch.nn"""
