#!/bin/bash
# CPU cost per training step of the losses added after step_cost.sh, relative to NT-Xent, at its scale: CIFAR-10
# (5% = 2500 images), the study's CNN with a 512-128 head, SimCLR augmentation, batch 256, 3 epochs (30 steps),
# 2 threads, one after another, NT-Xent first and last.
export CL_DATA_ROOT=/work/shared/data OMP_NUM_THREADS=2
for loss in ntxent nt_logistic nt_logistic_sh in_batch_margin in_batch_margin_sh supervised swav dino ntxent; do
  /work/main/.venv/bin/cl-run dataset=cifar10 dataset.train_fraction=0.05 aug=simclr optimizer=adam loss=$loss \
    "encoder.projector=[512,128]" epochs=3 batch_size=256 eval.tsne_points=0 eval.baseline=false \
    eval.protocols=[standard] hydra.run.dir=step_cost_new/$loss-$RANDOM > /dev/null 2>&1
done
for f in step_cost_new/*/metrics.json; do
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[1], m['train']['seconds'] / m['train']['steps'])" $f
done
# multi-crop: SwAV with 2 global and 6 local views (20 x 20: the study's CNN takes 18 to 33 pixels)
/work/main/.venv/bin/cl-run dataset=cifar10 dataset.train_fraction=0.05 aug=multicrop pairing.local_views=6 \
  aug.ops.local_crop.size=20 optimizer=adam loss=swav "encoder.projector=[512,128]" epochs=3 batch_size=256 \
  eval.tsne_points=0 eval.baseline=false eval.protocols=[standard] hydra.run.dir=step_cost_new/swav_multicrop \
  > /dev/null 2>&1
python3 -c "import json; m=json.load(open('step_cost_new/swav_multicrop/metrics.json')); print('swav_multicrop', m['train']['seconds'] / m['train']['steps'])"
