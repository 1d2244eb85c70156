"""The command-line interface: one module per verb group; the only code that prints and sets exit statuses.
"""
