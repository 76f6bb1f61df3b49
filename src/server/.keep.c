/* keeps the server library non-empty while the module grows */
typedef int tern_server_keep;
