"""Glue between disca's runtime and other libraries' pipelines. Each module imports its library lazily."""
