"""Multi-device Llama with Keras' own distribution API (``keras.distribution``, JAX backend).

`llama3_layout_map` says how each weight of a `Llama3Backbone` is cut over a device mesh with a
``"batch"`` and a ``"model"`` axis (Megatron-style: the projections that fan out are split by
output columns, those that fan in by input rows, so each block needs one reduction per half), and
`place_on_shards` puts a host array straight onto the shards of the variable it is loaded into.

Typical use (8 devices, 2-way data parallel x 4-way model parallel)::

    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), keras.distribution.list_devices())
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=Llama3Backbone.get_layout_map(mesh), batch_dim_name="batch"))
    model = Llama3CausalLM.from_preset("hf://meta-llama/Llama-3.2-1B-Instruct")
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

__all__ = ["describe_sharding", "llama3_layout_map", "place_batch", "place_on_shards"]

_LAYER = r".*transformer_layer_\d+/"


def llama3_layout_map(
    device_mesh: keras.distribution.DeviceMesh,
    model_parallel_dim_name: str = "model",
    data_parallel_dim_name: str | None = "batch",
    shard_weights_over_batch: bool = False,
) -> keras.distribution.LayoutMap:
    """A `keras.distribution.LayoutMap` for `Llama3Backbone` weights.

    Kernels are split over ``model_parallel_dim_name`` along their head/intermediate/vocabulary
    dimension and replicated over the batch axis, which carries data parallelism (pass
    ``batch_dim_name`` of the same name to `keras.distribution.ModelParallel`). With
    ``shard_weights_over_batch=True`` they are also sliced over ``data_parallel_dim_name`` along
    the other dimension, as in FSDP: less memory per device, an all-gather per use. Norm scales
    are replicated. Every split dimension must be divisible by the size of its mesh axis.

    Example:
        >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
        ...                                      keras.distribution.list_devices()[:1])
        >>> layout_map = llama3_layout_map(mesh)
        >>> layout_map["llama3_backbone/transformer_layer_0/attention/query/kernel"].axes
        (None, 'model')
    """
    for name in (model_parallel_dim_name, data_parallel_dim_name):
        if name is not None and name not in device_mesh.axis_names:
            raise ValueError(
                f"Mesh axis {name!r} not in the device mesh's axes {tuple(device_mesh.axis_names)}; "
                "build the mesh with axis_names=('batch', 'model') or pass the names used."
            )
    model = model_parallel_dim_name
    data = data_parallel_dim_name if shard_weights_over_batch else None
    layout_map = keras.distribution.LayoutMap(device_mesh)
    # Vocabulary over "model": the embedding lookup and the logits are both split by token id.
    layout_map[r".*token_embedding/embeddings"] = (model, data)
    layout_map[r".*token_embedding/reverse_embeddings"] = (data, model)
    # Fan-out projections: split by output columns (heads, intermediate units).
    layout_map[_LAYER + r"attention/(query|key|value)/kernel"] = (data, model)
    layout_map[_LAYER + r"attention/(query|key|value)/bias"] = (model,)
    layout_map[_LAYER + r"(ffn_gate|ffn_up)/kernel"] = (data, model)
    layout_map[_LAYER + r"(ffn_gate|ffn_up)/bias"] = (model,)
    # Fan-in projections: split by input rows, so they consume the split activations directly.
    layout_map[_LAYER + r"attention/attention_output/kernel"] = (model, data)
    layout_map[_LAYER + r"ffn_down/kernel"] = (model, data)
    if data is not None:
        # Weights sliced over the batch axis make XLA choose a layout per activation, and it may
        # choose differently for query, key and value, which cuDNN's fused attention refuses to
        # partition. Keras constrains a layer's output when its path + "/output" matches.
        layout_map[_LAYER + r"attention/(query|key|value)/output"] = (data, None, model)
    return layout_map


def place_on_shards(variable, array: np.ndarray):
    """Puts a host array where ``variable`` lives, each device receiving only its own shard.

    With JAX, each device receives ``array[its index]`` from the host
    (``jax.make_array_from_callback``), so loading a checkpoint never materialises a whole tensor
    on one accelerator; with several hosts, each process places only its own devices' shards.
    Other backends get the array back unchanged.

    Example:
        >>> import numpy as np
        >>> v = keras.Variable(np.zeros((4, 2), "float32"))
        >>> v.assign(place_on_shards(v, np.ones((4, 2), "float32")))  # doctest: +ELLIPSIS
        Array(...)
    """
    if keras.backend.backend() != "jax":
        return array
    import jax

    sharding = getattr(variable.value, "sharding", None)
    if sharding is None:
        return array
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def place_batch(tree: Any) -> Any:
    """Lays out every array of ``tree`` as the active distribution lays out data.

    Under a `keras.distribution` (JAX), an array whose first dimension divides evenly over the
    distribution's batch axis is split along it, as Keras splits ``fit``'s batches; the others
    (batch 1 on a split batch axis) are replicated over the mesh. The generation engine passes
    its token ids, masks and key/value cache through this, so that they are laid out like the
    activations the layout map gives: XLA then never pairs a replicated mask with split queries
    and keys (which cuDNN's fused attention refuses). Without a distribution, or on another
    backend, ``tree`` comes back unchanged. Scalars are left as they are.

    Example:
        >>> import numpy as np
        >>> place_batch({"token_ids": np.zeros((8, 4), "int32")})["token_ids"].shape  # doctest: +SKIP
        (8, 4)
    """
    if keras.backend.backend() != "jax":
        return tree
    distribution = keras.distribution.distribution()
    if distribution is None:
        return tree
    import jax

    mesh = distribution.device_mesh.backend_mesh
    batch_axis = getattr(distribution, "batch_dim_name", None)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(x: Any) -> Any:
        shape = np.shape(x)
        if not shape:
            return x
        sharding = replicated
        if batch_axis is not None and shape[0] % mesh.shape[batch_axis] == 0:
            sharding = distribution.get_data_layout(shape).backend_layout
        if isinstance(x, jax.Array):
            if x.sharding.is_equivalent_to(sharding, len(shape)):
                return x
            if jax.process_count() == 1 or not x.is_fully_addressable:
                return jax.device_put(x, sharding)
        array = np.asarray(x)  # several hosts: each places its own devices' slices
        return jax.make_array_from_callback(shape, sharding, lambda index: array[index])

    return jax.tree.map(place, tree)


def describe_sharding(model) -> dict[str, dict[str, Any]]:
    """Per weight: its global shape, its partition spec and the shape of one device's shard.

    Example:
        >>> describe_sharding(model.backbone)["llama3_backbone/token_embedding/embeddings"]  # doctest: +SKIP
        {'shape': (128256, 2048), 'spec': ('model', 'batch'), 'shard_shape': (32064, 1024), 'devices': 8}
    """
    out: dict[str, dict[str, Any]] = {}
    for variable in model.weights:
        value = variable.value
        sharding = getattr(value, "sharding", None)
        shape = tuple(variable.shape)
        if sharding is None:
            out[variable.path] = {"shape": shape, "spec": None, "shard_shape": shape, "devices": 1}
            continue
        spec = getattr(sharding, "spec", None)
        out[variable.path] = {
            "shape": shape,
            "spec": None if spec is None else tuple(spec),
            "shard_shape": tuple(sharding.shard_shape(shape)),
            "devices": len(sharding.device_set),
        }
    return out
