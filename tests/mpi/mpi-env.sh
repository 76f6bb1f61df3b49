# mpi-env.sh: sourced by the MPI test scripts. Open MPI as root on this machine's few cores:
# root allowed, more ranks than cores, no binding (the engine pins its own threads with
# hwloc), no single-copy (CMA is refused in containers); LeakSanitizer off under mpirun,
# whose own allocations it would report.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=none
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
