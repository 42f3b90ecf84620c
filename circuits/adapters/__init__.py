"""Model-family adapters: which sites a model has and what the axes of each activation are called.

`transformer_lens` covers HookedTransformer (3.x) and TransformerBridge (4.x) through their
`hook_dict`; `torch_module` covers any `torch.nn.Module` through `named_modules()` paths.
"""
