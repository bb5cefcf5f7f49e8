"""sources/mock"""
