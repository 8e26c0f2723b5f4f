# Unit tests of shard/ (forward pass, KV cache, partitions).
