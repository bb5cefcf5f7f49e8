"""summary_statistics"""
