"""Trainable networks added by the project (discriminators, adapters, ControlNets)."""
