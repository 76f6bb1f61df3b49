/* keeps the model library non-empty while the module grows */
typedef int tern_model_keep;
