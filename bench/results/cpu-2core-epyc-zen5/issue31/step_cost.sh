#!/bin/bash
# CPU cost per training step of the new losses relative to NT-Xent: CIFAR-10 (5% = 2500 images), the study's
# CNN with a 512-128 head, SimCLR augmentation, batch 256, 3 epochs (30 steps), 2 threads, one after another.
export CL_DATA_ROOT=/work/shared/data OMP_NUM_THREADS=2
for loss in ntxent imix imix_moco imix_byol ntxent; do
  /work/main/.venv/bin/cl-run dataset=cifar10 dataset.train_fraction=0.05 aug=simclr optimizer=adam loss=$loss \
    "encoder.projector=[512,128]" epochs=3 batch_size=256 eval.tsne_points=0 eval.baseline=false \
    eval.protocols=[standard] hydra.run.dir=step_cost/$loss-$RANDOM > /dev/null 2>&1
done
