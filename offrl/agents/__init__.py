"""Offline RL algorithms, one file each, as pure update functions."""
