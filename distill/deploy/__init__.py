"""From a distilled student to a deployed model: export and check (a different job from training, so it imports the
trainer's outputs, never the other way round)."""
