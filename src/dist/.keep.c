/* keeps the dist library non-empty while the module grows */
typedef int tern_dist_keep;
