"""`plait eval`: tasks, sampling once and replaying strategies on the stored samples, tables and plots."""
