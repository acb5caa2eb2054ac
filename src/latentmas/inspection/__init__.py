"""What agents thought: traces (logit lens, PCA), their terminal view and HTML page."""
