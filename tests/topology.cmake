# Unit tests of topology/ (RDMA description and UCX proposal, sysfs reader, memory plan,
# engine-group layout rule).
tandem_unit_test(topo_propose test_topo_propose.c tdm_topology)
tandem_unit_test(topo_sysfs test_topo_sysfs.c tdm_topology)
tandem_unit_test(topo_plan test_topo_plan.c tdm_topology tdm_shard)
tandem_unit_test(topo_layout test_topo_layout.c tdm_topology)
