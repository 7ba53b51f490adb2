"""The classical toolbox beside structural surgery: unstructured `W ⊙ M` masks and their commit
(`masks`), iterative pruning (`schedule`), lottery tickets (`lottery`), BatchNorm
re-estimation after surgery (`recalibrate`)."""
