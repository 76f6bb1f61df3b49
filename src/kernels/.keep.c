/* keeps the kernels library non-empty while the module grows */
typedef int tern_kernels_keep;
