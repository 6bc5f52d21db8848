# GPU choices shared by run_dataflow.sh and dataflow/build_flex_template.sh.
# Source it, then call `resolve_gpu` with GPU_TYPE, GPU_COUNT and (optional)
# MACHINE_TYPE set; it sets GPU_ACCELERATOR (the Compute Engine accelerator
# type), MACHINE_TYPE (a machine type that takes that GPU and count) and
# WORKER_ACCELERATOR (the worker_accelerator service option), or prints what
# is wrong and returns 2.
#
#   GPU_TYPE   accelerator          default machine type (by GPU_COUNT)
#   t4         nvidia-tesla-t4      n1-standard-8 (1, 2, 4 GPUs); N1 machines
#   l4         nvidia-l4            g2-standard-8 (1), -24 (2), -48 (4), -96 (8)
#   a100       nvidia-tesla-a100    a2-highgpu-1g/2g/4g/8g, a2-megagpu-16g
#
# G2 and A2 machine types come with a fixed number of GPUs, so a MACHINE_TYPE
# that does not match GPU_COUNT is refused here rather than by Dataflow.

_gpu_error() {
  echo "$(basename "$0"): $*" >&2
  return 2
}

resolve_gpu() {
  local type="${GPU_TYPE:-t4}" count="${GPU_COUNT:-1}" family counts default
  case "$count" in
    ''|*[!0-9]*|0*) _gpu_error "GPU_COUNT=$count: use a positive whole number (GPUs per worker)." || return 2 ;;
  esac
  case "${type,,}" in
    t4|nvidia-tesla-t4)
      GPU_ACCELERATOR=nvidia-tesla-t4; family=n1; counts="1 2 4"
      default=n1-standard-8 ;;
    l4|nvidia-l4)
      GPU_ACCELERATOR=nvidia-l4; family=g2; counts="1 2 4 8"
      case "$count" in
        1) default=g2-standard-8 ;; 2) default=g2-standard-24 ;;
        4) default=g2-standard-48 ;; 8) default=g2-standard-96 ;;
      esac ;;
    a100|nvidia-tesla-a100)
      GPU_ACCELERATOR=nvidia-tesla-a100; family=a2; counts="1 2 4 8 16"
      case "$count" in
        16) default=a2-megagpu-16g ;; *) default="a2-highgpu-${count}g" ;;
      esac ;;
    *)
      _gpu_error "GPU_TYPE=$type: choose t4 (nvidia-tesla-t4), l4 (nvidia-l4) or a100 (nvidia-tesla-a100)." || return 2 ;;
  esac
  case " $counts " in
    *" $count "*) ;;
    *) _gpu_error "GPU_COUNT=$count: a worker can have $counts x $GPU_ACCELERATOR." || return 2 ;;
  esac
  MACHINE_TYPE="${MACHINE_TYPE:-$default}"
  case "$MACHINE_TYPE" in
    "$family"-*) ;;
    *) _gpu_error "MACHINE_TYPE=$MACHINE_TYPE cannot take $GPU_ACCELERATOR GPUs: use a ${family}-* machine type (default: $default), or leave MACHINE_TYPE unset." || return 2 ;;
  esac
  local fixed=""
  case "$MACHINE_TYPE" in
    g2-standard-4|g2-standard-8|g2-standard-12|g2-standard-16|g2-standard-32) fixed=1 ;;
    g2-standard-24) fixed=2 ;; g2-standard-48) fixed=4 ;; g2-standard-96) fixed=8 ;;
    a2-highgpu-1g) fixed=1 ;; a2-highgpu-2g) fixed=2 ;; a2-highgpu-4g) fixed=4 ;;
    a2-highgpu-8g) fixed=8 ;; a2-megagpu-16g) fixed=16 ;;
    g2-*|a2-*)
      # Other G2/A2 names do not exist or carry another GPU (a2-ultragpu-*:
      # the 80 GB A100, nvidia-a100-80gb).
      _gpu_error "MACHINE_TYPE=$MACHINE_TYPE is not a $GPU_ACCELERATOR machine type: use $default for $count GPU(s), or leave MACHINE_TYPE unset." || return 2 ;;
    n1-custom-*) ;;
    n1-*-[0-9]*)
      # An N1 machine takes 1 or 2 T4s up to 48 vCPUs, 4 T4s up to 96.
      local vcpus="${MACHINE_TYPE##*-}" most=48
      [ "$count" = 4 ] && most=96
      if [[ "$vcpus" =~ ^[0-9]+$ ]] && [ "$vcpus" -gt "$most" ]; then
        _gpu_error "MACHINE_TYPE=$MACHINE_TYPE has $vcpus vCPUs; with $count T4 GPU(s) an N1 machine may have at most $most: use a smaller one (default: $default)." || return 2
      fi ;;
  esac
  if [ -n "$fixed" ] && [ "$fixed" != "$count" ]; then
    _gpu_error "MACHINE_TYPE=$MACHINE_TYPE comes with $fixed GPU(s) but GPU_COUNT=$count: set GPU_COUNT=$fixed, or leave MACHINE_TYPE unset (default for $count: $default)." || return 2
  fi
  WORKER_ACCELERATOR="worker_accelerator=type:${GPU_ACCELERATOR};count:${count};install-nvidia-driver"
}
