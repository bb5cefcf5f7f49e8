"""faithfulness"""
