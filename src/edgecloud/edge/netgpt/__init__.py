"""NetGPT (arXiv 2511.22217): network-aware routing of tool calls between an edge agent and a
cloud agent, and schema-preserving RL of the edge model from what it offloads.

See docs/netgpt.md. ``policy`` holds the routing rule (no I/O), ``router`` the OpenAI-compatible
proxy (``edgecloud edge route``), ``bench`` the benchmark, ``rl`` and ``train`` the edge model's
training. Modules are imported on use: ``edgecloud --help`` loads none of them.
"""
