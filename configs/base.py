"""Defaults shared by every experiment; experiment files override them (SPEC values by default).

Each config is an ml_collections ConfigDict, locked by the entry point: a misspelt key fails loudly.
"""

import ml_collections


def dataset_config(name: str = '', resolution=(1024, 512)) -> ml_collections.ConfigDict:
  """One dataset role (target or source): which layout, where its trees are."""
  return ml_collections.ConfigDict(dict(
      name=name,              # cityscapes | gta5 | synthia | camvid | folder (your own data,
                              # docs/folder_dataset.md) | '' (role unused)
      root='',                # prepared tree read by the pipelines ('' -> <workdir>/data/<role>)
      raw_root='',            # raw tree to prepare into `root` ('' -> none, or
                              # <workdir>/raw/<role>)
      sequence_root='',       # video set if elsewhere (GTA: the VIPER-layout set; '' -> default)
      resolution=resolution,  # (W, H) working resolution of the prepared tree
      val_count=500,          # GTA5 / Synthia: the last N sorted images form the val split
      # An example the data stage recorded (data/summary.json) but gone from the tree: False, an
      # error naming the file and split; True, a warning naming it, and the split shrinks.
      allow_missing=False,
      backend='folder',       # where the pipelines read the prepared files: folder (the tree)
                              # | tfds (ArrayRecord shards of it, data_pipelines.build_shards)
      tfds_dir='',            # tfds: the shards' data_dir, local or gs://
                              # ('' -> <workdir>/tfds/<role>)
      synthetic=dict(         # render the built-in synthetic world into the raw tree
          domain='',          # '' (off) | city | game
          size=(256, 128),    # (W, H) rendered
          sequences=12, frames=5, seed=0, val_fraction=0.2, moving_objects=True),
  ))


def model_config(depth: int = 101, output_stride: int = 16,
                 decoder: str = 'dec6') -> ml_collections.ConfigDict:
  """A network design (SPEC section 3); sdeseg_jax.models.networks.build(kind, config) builds it."""
  return ml_collections.ConfigDict(dict(
      # remat: recompute each residual block's activations in the backward pass instead of
      # keeping them (less memory, ~1/3 more encoder compute); parameters and results unchanged.
      encoder=dict(depth=depth, output_stride=output_stride, width=64, stage_sizes=(),
                   remat=False),
      decoder=dict(name=decoder, width_scale=1.0),   # dec6 | dec11 | dec9; channels x width_scale
      pose_encoder=dict(depth=18, output_stride=32, width=64, stage_sizes=(), remat=False),
      num_classes=19,
      side_output=True,        # mtl: PAD-Net's side head, its CE averaged with the final head's
                               # (reference); False: the final head's CE alone
      distillation=True,       # mtl: PAD-Net's exchange of distilled features between the depth
                               # and segmentation decoders (reference); False: none
      projected_head=False,    # mtl: True puts the transfer head's 1x1 projection before PAD-Net's
                               # classifier; False: the classifier alone (reference)
      # auto: bfloat16 on TPUs and GPUs, float32 on CPUs (models.networks.PLATFORM_DTYPES)
      # | float32 | bfloat16; parameters and BN statistics stay float32 either way.
      compute_dtype='auto',
  ))


def make_tiny(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same design at a width and depth a CPU test runs in seconds (tests and the demo)."""
  for encoder in (model.encoder, model.pose_encoder):
    encoder.width = 8
    encoder.stage_sizes = (1, 1, 1, 1)
  model.decoder.width_scale = 1 / 8
  return model


def optim_config(name: str, groups: dict, *, kind: str = 'constant', boundaries=(),
                 factor: float = 0.1, power: float = 0.9, total_steps: int = 0,
                 momentum: float = 0.9, weight_decay: float = 0.0,
                 clip_norm: float = 0.0, accumulate_steps: int = 1) -> ml_collections.ConfigDict:
  """An optimiser (sdeseg_jax.training.optim): groups = {name: dict(pattern, lr, frozen)}.

  accumulate_steps = k > 1: gradients of k train steps averaged into one update (a k times larger
  batch in the memory of one; num_steps then counts micro-batches, the schedule updates)."""
  return ml_collections.ConfigDict(dict(
      name=name, momentum=momentum, weight_decay=weight_decay, clip_norm=clip_norm,
      accumulate_steps=accumulate_steps,
      schedule=dict(kind=kind, boundaries=tuple(boundaries), factor=factor, power=power,
                    total_steps=total_steps),
      groups={k: dict(dict(frozen=False), **v) for k, v in groups.items()}))


def sde_config() -> ml_collections.ConfigDict:
  """Self-supervised depth pretraining (SPEC sections 4-5); defaults: the reference's phase C."""
  return ml_collections.ConfigDict(dict(
      batch_size=4,
      crop=(512, 512),           # (w, h); the working resolution for uncropped frames (phase A)
      num_steps=100_000,
      optim=optim_config('adam', dict(
          encoder=dict(pattern='^encoder/', lr=1e-5),
          depth_decoder=dict(pattern='^depth_decoder/', lr=1e-5),
          pose=dict(pattern='^pose/', lr=1e-5))),
      feature_distance=1e-2,     # x L2 distance of layer4 features to the ImageNet encoder's (C)
      min_depth=0.1, max_depth=100.0, smoothness=1e-3,
      # The fraction of the training triplets it trains on: a random subset drawn from config.seed
      # (at least one triplet; the paper's Table 9 rows 1.0 / 0.1 / 0.01 / 0.001).
      frame_fraction=1.0,
      # Initialisation, each an Orbax checkpoint folder ('' = random init):
      init=dict(
          encoder='',            # ImageNet ResNet (sdeseg_jax.weights.convert --from torchvision)
          pose_encoder='',       # ImageNet ResNet18 converted with --num_input_images 2
          sde='',                # a whole SDE network: --from reference_sde, or an SDE run's ckpt
      ),
      log_every=50, checkpoint_every=1000, keep_checkpoints=3, images_every=1000,
      # Depth evaluation on the validation split where ground truth exists (0: only at the end).
      eval_every=0, eval_images=200, eval_min_depth=1e-3, eval_max_depth=80.0,
  ))


def segment_config() -> ml_collections.ConfigDict:
  """Semi-supervised segmentation (SPEC section 6); defaults: the reference's full method."""
  return ml_collections.ConfigDict(dict(
      network='mtl',             # transfer (encoder + segmentation decoder) | mtl (PAD-Net + pose)
      init='sde',                # sde: from the SDE run (<workdir>/sde/ckpt or sde_checkpoint)
                                 # | imagenet: encoder from imagenet_encoder | none: random
      sde_checkpoint='',
      imagenet_encoder='',
      labels=372,                # labeled training images (0: all)
      selection='',              # '' = seeded random subset | 'select_labels' = the select_labels
                                 # stage's <workdir>/selection.json | a path: an ordered id list
      mix='depthmix',            # none (supervised only) | pseudo | classmix | depthmix
      depthmix_margin=0.03,
      quality_threshold=0.968,
      unlabeled_loss='all_mean', # reference: q * CE over ALL pixels | valid_mean
      teacher_train_mode=True,   # reference: the mean teacher runs with batch-statistics BN
      ema_decay=0.99,            # mean teacher: ema = a ema + (1 - a) student,
                                 # a = min(1 - 1/(t+1), decay)
      # Strong augmentation of mixed images (SPEC 6): colour jitter with probability jitter_prob
      # (brightness/contrast/saturation/hue of strength `strength`), Gaussian blur with blur_prob.
      strong_augment=dict(jitter_prob=0.8, blur_prob=0.5, strength=0.25),
      sde_weight=1.0,            # multi-task: SDE loss on the labeled and the mixing batch
      # Multi-task: the student's own forward on the unmixed mixing batch gives DepthMix its
      # disparity (detached, level 0) and the mixing batch its SDE loss (True: SPEC 6, reference
      # master); False: DepthMix reads the depth labels and only the labeled batch gets the SDE
      # loss (the reference's domain adaptation, branch ssda).
      depthmix_online_depth=True,
      # Semi-supervised domain adaptation (SPEC 7): labeled source crops (config.data.source) with
      # their CE loss, and Cross-Domain mixing of source crop b onto target crop b of the mixing
      # batch (`mix` above is then the Target-Domain mixing).
      source=dict(
          enabled=False,
          batch_size=2,
          mix='depthmix',          # depthmix (Cross-Domain DepthMix) | classmix (DACS) | none
          margin_flip=True,        # the DepthMix margin's sign flipped per pair with p = 0.5
          disparity='reference',   # reference: raw source vs min-max normalised target disparity
                                   # | normalized: both normalised
          matching_geometry=True,  # Matching Geometry Sampling: per target crop the best of
          candidates=5,            #   `candidates` random source crops by geometric difference G
          geometry_rows=(80, 100), #   (top, bottom) crop rows left out of G
      ),
      batch_size=2, mix_batch_size=2, num_steps=40_000,
      optim=optim_config('sgd', dict(
          encoder=dict(pattern='^encoder/', lr=1e-3),
          decoder=dict(pattern='^(seg_decoder|seg_head|pad)/', lr=1e-2),  # incl. the depth decoder
          pose=dict(pattern='^pose/', lr=1e-6)),
          kind='step', boundaries=(30_000,), momentum=0.9, weight_decay=5e-4, clip_norm=10.0),
      log_every=50, checkpoint_every=1000, keep_checkpoints=3, images_every=1000,
      eval_every=2000, eval_batch_size=2,
  ))


def select_config() -> ml_collections.ConfigDict:
  """Automatic data selection (SPEC section 8, sdeseg_jax/stages/select_labels.py); defaults: the
  reference's DS+US schedule on Cityscapes."""
  return ml_collections.ConfigDict(dict(
      method='ds_us',            # ds_us: diversity + uncertainty | ds: diversity (SDE features)
                                 # | us: uncertainty (depth-student error) | random
                                 # | entropy: active learning with a segmentation student (labels)
      initial='diversity',       # the first sizes[0] images: diversity (one random image, then
                                 # farthest points) | random
      sizes=(25, 50, 100, 200, 372, 744),  # selection size after each step; output = sizes[-1] ids
      student_steps=(4000, 8000, 12000, 16000, 20000),  # student iterations before steps 1, 2, ...
      lambda_e=1000.0,           # weight of the depth-student error E against the feature distance
      feature_level=3,           # SDE depth decoder level whose output is phi
      feature_pool=(4, 8),       # (h, w) average pooling of phi
      sde_checkpoint='',         # SDE for phi ('' -> <workdir>/sde/ckpt)
      eval_batch_size=8,         # images per batch when computing phi and scoring (whole images)
      keep_students=False,       # keep each step's student checkpoint after its step (disk: ~0.5 GB
                                 # each at full size); a step in progress always keeps its own
      student=dict(              # the depth student (config.student_model; entropy: + seg head)
          batch_size=2,          # crops of config.data.crop
          init_encoder='',       # ImageNet ResNet (weights.convert --from torchvision); '' = random
          optim=optim_config('adam', dict(all=dict(pattern='.', lr=1e-4)), kind='poly', power=0.9),
          log_every=50, checkpoint_every=1000),
  ))


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = 'base'
  config.seed = 0
  # Comma-separated stages, run in order; finished ones (a `done` marker) are skipped.
  config.stages = 'data'
  # Persistent XLA compilation cache shared by runs and tests ('' disables it).
  config.compilation_cache_dir = '~/.cache/sdeseg_jax/xla'

  # Networks: the target-domain SDE / segmentation design, the source-domain SDE (SSDA) and the
  # data-selection depth student.
  config.model = model_config()
  config.source_model = model_config(output_stride=32, decoder='dec11')
  config.student_model = model_config(depth=50, decoder='dec9')

  config.sde = sde_config()
  # Domain adaptation: the source-domain SDE (sde_source stage), trained like config.sde.
  config.source_sde = sde_config()
  config.depth_labels = ml_collections.ConfigDict(dict(
      roles=('target',),        # whose segmentation images get depth labels (SSDA: + 'source')
      # Where the target's labels come from (the source domain's always from its SDE):
      # sde (the SDE's inference) | groundtruth (the dataset's metric depth in the raw tree: the
      # synthetic world's, Cityscapes' stereo) | file (depth_dir). Metric depth is converted into
      # the SDE's disparity with config.sde's min/max depth (sdeseg_jax/stages/depth_labels.py).
      source='sde',
      sde_checkpoint='',        # source=sde: the SDE ('' -> <workdir>/sde/ckpt; another run's
                                # sde/ckpt, e.g. an SDE of another dataset)
      depth_dir='',             # source=file: <example id>.npy (float metres) or .png (16-bit,
                                # metres = value / 256); 0 = unknown
      batch_size=8))

  config.select = select_config()
  config.segment = segment_config()
  config.evaluate = ml_collections.ConfigDict(dict(
      weights='best',            # best (by val mIoU during training) | latest
      split='val',               # the segmentation split evaluated (CamVid: test)
      class_subsets=(),          # extra protocols: '16', '13' (SYNTHIA -> Cityscapes)
      export_splits=(),          # e.g. ('val', 'test'): label-id PNGs in the official format
  ))

  config.data = ml_collections.ConfigDict()
  config.data.target = dataset_config('cityscapes')
  config.data.source = dataset_config('')
  config.data.crop = (512, 512)           # (w, h) training crops
  config.data.flip_prob = 0.5
  config.data.color_jitter = dict(prob=0.5, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)
  config.data.strict_labels = True        # label ids outside the dataset's ids: error (else ignore)
  config.data.image_format = 'jpg'        # prepared images: jpg (quality 98, as the
                                          # reference) | png
  config.data.workers = 0                 # threads for preparing / scanning (0: one per core)
  config.data.summary_max_labels = 500    # label maps scanned for the class-frequency summary
  return config
