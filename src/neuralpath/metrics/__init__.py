"""Metrics for pathways (faithfulness, class relevance) and for saliency maps."""
