"""The browser front ends (application layer, beside the command line)."""
