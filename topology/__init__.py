"""The cloud's logical topology: model, graph, durable store and IPAM."""
