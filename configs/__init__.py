"""Experiment configs: each file's get_config() returns one ml_collections.ConfigDict."""
