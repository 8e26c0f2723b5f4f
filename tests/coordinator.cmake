# Unit tests of coordinator/ (tokenizer, chat templates, sampling).
tandem_unit_test(sampler test_sampler.c tdm_coordinator)
tandem_unit_test(kv_manager test_kv_manager.c tdm_coordinator)
tandem_unit_test(tokenizer test_tokenizer.c tdm_coordinator)
tandem_unit_test(scheduler test_scheduler.c tdm_coordinator)
