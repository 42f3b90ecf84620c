"""Model graphs: each model family's nodes, how they feed each other, and its ablated run.

- `residual`: a TransformerLens model's residual stream (embeddings, heads, MLPs, logits as
  senders and receivers), shared by edge attribution and edge-level faithfulness;
  `residual_ablation` runs it with only a graph's edges carrying their value.
- `channels`: a conv net's channel graph, traced with autograd (which conv feeds which, across
  residual connections); `channel_ablation` runs it with only a graph's channel edges kept.

Analyses (attribution) and faithfulness read these; the graph stage never does.
"""
