"""Inputs of a job: items, text files, image files and safe image decoding."""
