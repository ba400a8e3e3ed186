"""The engine: pruning as functions of tensors and modules (no I/O beyond the gradient file, no
user interface). Nothing is imported here; import the module you need.

* :mod:`.stats`: the statistics core: activation statistics (``X``, the Hessian ``H``), the
  gradient statistic ``G`` and its published file, per-window gradient moments; one key scheme
  and one precision policy for all of them;
* :mod:`.calib`: the prune driver's layer-sequential pass (block inputs, one block at a time);
* :mod:`.masks`: pure mask rules (per row, per layer, N:M, Wanda's variant);
* :mod:`.sparsegpt`: SparseGPT's mask and weight reconstruction from a Hessian;
* :mod:`.prune`: the registry of unstructured pruning methods and the layer-sequential driver;
* :mod:`.structured`: GQA-aware structured pruning (units, importance, allocation, surgery);
* :mod:`.finetune`: recovery fine-tuning (LoRA, full) that keeps a sparsity pattern;
* :mod:`.events`: progress events shared by every long computation;
* :mod:`.gradients`: the former home of the gradient file functions (now in :mod:`.stats`).
"""
