"""Training: the flow-matching teacher, the Restricted MeanFlow student and the cache predictor
on the synthetic text-to-video task (needs the `torch` extra)."""
