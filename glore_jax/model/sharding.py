"""The device mesh and the one table of PartitionSpecs for parameters, activations and caches.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism whose replicas also
split the parameters), `tensor` (Megatron-style splits of heads and MLP width). Batch
dimensions shard over ('data', 'fsdp'); parameters shard their model dimension over
`fsdp` and their head/width dimension over `tensor`.

A dimension that an axis does not divide (9 heads on tensor=4, batch 1 on 8 devices) is
replicated over that axis instead of failing: `fit_spec` does that in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """Logical name -> PartitionSpec. Shapes are in the comments; einsum letters:
  V vocab, D model, N query heads, K kv heads, H head dim, F MLP width, B batch, T time, S cache slots."""

  embedding: P = P("tensor", "fsdp")  # [V, D]
  q_proj: P = P("fsdp", "tensor", None)  # [D, N, H]
  kv_proj: P = P("fsdp", "tensor", None)  # [D, K, H]
  o_proj: P = P("tensor", None, "fsdp")  # [N, H, D]
  mlp_in: P = P("fsdp", "tensor")  # [D, F] gate and up
  mlp_out: P = P("tensor", "fsdp")  # [F, D]
  norm: P = P(None)  # [D]
  lm_head: P = P("fsdp", "tensor")  # [D, V]
  value_head: P = P("fsdp", None)  # [D, 1]
  value_bias: P = P(None)  # [1]
  # activations
  act_btd: P = P(BATCH, None, None)  # [B, T, D]
  act_btnh: P = P(BATCH, None, "tensor", None)  # [B, T, N, H]
  act_btf: P = P(BATCH, None, "tensor")  # [B, T, F]
  act_btv: P = P(BATCH, None, "tensor")  # [B, T, V]
  act_bt: P = P(BATCH, None)  # [B, T] tokens, positions, masks, values
  # KV cache
  cache_kv: P = P(BATCH, "tensor", None, None)  # keys [B, K, H, S], values [B, K, S, H]
  cache_b: P = P(BATCH)  # [B] per-row start and length


RULES = ShardingRules()


def make_mesh(
  data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 to take the remaining devices.

  Args:
    data: pure data-parallel replicas.
    fsdp: data-parallel replicas that also split the parameters.
    tensor: Megatron-style splits of heads and MLP width.
    devices: the devices to arrange (default: all of `jax.devices()`); their count must equal
      the product of the sizes.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh sizes data={data} fsdp={fsdp} tensor={tensor}: at most one may be -1")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or len(devices) % known:
      raise ValueError(
        f"mesh data={data} fsdp={fsdp} tensor={tensor} cannot be filled from {len(devices)} devices"
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices) or min(sizes) < 1:
    raise ValueError(
      f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, "
      f"but {len(devices)} devices are available ({devices[0].platform}); "
      "make the product of the mesh sizes equal the device count"
    )
  return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _axis_size(mesh: Mesh | jax.sharding.AbstractMesh, entry) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[n] for n in names)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh | jax.sharding.AbstractMesh) -> P:
  """Drops mesh axes from `spec` that do not evenly divide the dimension they split.

  Args:
    spec: a PartitionSpec; missing trailing entries count as None.
    shape: the shape it will split.
    mesh: the (concrete or abstract) mesh whose axis sizes must divide the dimensions.
  """
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if entry is None:
      fitted.append(None)
      continue
    names = entry if isinstance(entry, tuple) else (entry,)
    # keep the longest prefix of the axis group that divides the dimension
    kept = []
    for name in names:
      if dim % _axis_size(mesh, tuple(kept + [name])) == 0:
        kept.append(name)
      else:
        break
    fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*fitted)


def named(spec: P, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
  """`NamedSharding(mesh, spec)` with `spec` fitted to `shape` (see `fit_spec`).

  Args:
    spec: the PartitionSpec from the sharding table.
    shape: the array's shape.
    mesh: the mesh.
  """
  return NamedSharding(mesh, fit_spec(spec, shape, mesh))


def current_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh set with `jax.set_mesh`, or None when running unsharded."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x: jax.Array, spec: P) -> jax.Array:
  """`with_sharding_constraint` under a mesh; a no-op without one (plain single-device use).

  Args:
    x: the array (traced).
    spec: its PartitionSpec from the sharding table, fitted to `x.shape`.
  """
  mesh = current_mesh()
  if mesh is None or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh))


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """The one spec-to-sharding map: a NamedSharding for every leaf of `tree`, in its structure.

  An nnx Variable (a parameter, or an optimizer moment that mirrors one) follows its `partition`
  metadata (our key; flax's own `out_sharding` would shard eagerly at creation), fitted to its
  shape by `fit_spec`; any other leaf (a step count, an RNG key) is replicated.

  Args:
    tree: an nnx State (abstract or concrete), or any pytree holding nnx Variables and arrays.
    mesh: the mesh the shardings refer to.

  Returns:
    `tree` with each Variable's value replaced by its NamedSharding and each other leaf by the
    replicated NamedSharding.
  """
  from flax import nnx

  def one(x):
    if isinstance(x, nnx.Variable):
      return x.replace(named(P(*(x.get_metadata().get("partition") or ())), x.shape, mesh))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh of one device (this process's first by default): the
  unsharded case run through the same code as a sharded one.

  Args:
    device: the device; None takes `jax.local_devices()[0]`, where unplaced arrays go.
  """
  return make_mesh(1, 1, 1, devices=[device if device is not None else jax.local_devices()[0]])


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """Abstract arrays (`jax.ShapeDtypeStruct`) carrying `shardings`, for ahead-of-time lowering.

  Args:
    abstract_tree: a pytree of arrays or ShapeDtypeStructs (shape and dtype are kept).
    shardings: a pytree of the same structure of shardings.
  """
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings
  )
