"""The P2P side (trio thread): host, /lloom/llm/1.0.0, discovery and gossip."""
