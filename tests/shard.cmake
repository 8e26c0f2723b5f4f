# Unit tests of shard/ (forward pass, KV cache, partitions).
tandem_unit_test(shard_kv test_shard_kv.c tdm_shard)
tandem_unit_test(shard_ops test_shard_ops.c tdm_shard m)
tandem_unit_test(shard_comm test_shard_comm.c tdm_transport)
