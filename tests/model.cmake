# Unit tests of model/ (tensor types, GGUF reader and writer).
tandem_unit_test(tensor_types test_tensor_types.c tdm_model)
