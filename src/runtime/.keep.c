/* keeps the runtime library non-empty while the module grows */
typedef int tern_runtime_keep;
