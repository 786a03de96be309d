"""Losses, each a small named function; trainers weight them by named lambdas and log each."""
