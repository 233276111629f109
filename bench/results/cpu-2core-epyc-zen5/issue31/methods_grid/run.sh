#!/bin/bash
# The README's "Every method on MNIST" table, for the losses added by issue 31: experiment=methods_grid (MNIST,
# SimCLR augmentation, the study's CNN with a 512-128 head, Adam 1e-3, batch 256, 5 epochs), seed 0, one job at a
# time on 2 threads, t-SNE off (it does not change the scores).
export CL_DATA_ROOT=/work/shared/data OMP_NUM_THREADS=2
/work/main/.venv/bin/cl-run -m experiment=methods_grid \
  loss=nt_logistic,nt_logistic_sh,in_batch_margin,in_batch_margin_sh,imix_moco,imix_byol,supervised,swav,dino \
  eval.tsne_points=0 hydra/launcher=basic hydra.sweep.dir=new_losses > new_losses.log 2>&1
