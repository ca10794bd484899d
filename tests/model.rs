//! Models and method parts: ResNet shapes, names and sizes against
//! torchvision's, zero-init residuals, EMA arithmetic, the MoCo queue, and
//! shuffle BN's un-shuffling.

use eqco::base::device::Compute;
use eqco::method::moco::Queue;
use eqco::method::shuffle::shuffle_indices;
use eqco::model::{Ema, Encoder, EncoderConfig, HeadKind, Norm, ResNet, ResNetConfig, Stem};
use rand::SeedableRng;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn resnet(depth: usize, width: f64, stem: Stem) -> ResNetConfig {
    ResNetConfig {
        depth,
        width,
        stem,
        in_channels: 3,
        zero_init_residual: false,
    }
}

fn n_params(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[test]
fn sizes_and_names_match_torchvision() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(0, || {
        // torchvision's resnet18 / resnet50 have 11,689,512 / 25,557,032
        // parameters, of which fc has 513,000 / 2,049,000.
        for (depth, expected, feat) in [(18, 11_176_512, 512), (50, 23_508_032, 2048)] {
            let vs = VarStore::new(Device::Cpu);
            let net = ResNet::new(&vs.root(), resnet(depth, 1.0, Stem::Imagenet)).unwrap();
            assert_eq!(n_params(&vs), expected, "resnet{depth}");
            assert_eq!(net.config.feature_dim(), feat);
            let names = vs.variables();
            for n in [
                "conv1.weight",
                "bn1.weight",
                "bn1.running_mean",
                "layer1.0.conv1.weight",
                "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_var",
                "layer4.1.bn2.bias",
            ] {
                assert!(names.contains_key(n), "resnet{depth} lacks {n}");
            }
            if depth == 50 {
                assert!(names.contains_key("layer3.5.conv3.weight"));
                assert!(names.contains_key("layer1.0.downsample.0.weight"));
            }
        }
    });
}

#[test]
fn forward_shapes_for_stems_widths_and_depths() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(1, || {
        for (depth, width, stem, side, feat) in [
            (18, 1.0, Stem::Small, 32, 512),
            (10, 0.25, Stem::Small, 28, 128),
            (34, 0.25, Stem::Imagenet, 64, 128),
            (50, 0.25, Stem::Small, 16, 512),
            (18, 2.0, Stem::Small, 8, 1024),
        ] {
            let vs = VarStore::new(Device::Cpu);
            let net = ResNet::new(&vs.root(), resnet(depth, width, stem)).unwrap();
            let x = Tensor::randn([2, 3, side, side], (Kind::Float, Device::Cpu));
            let y = net.forward_t(&x, true);
            assert_eq!(y.size(), vec![2, feat], "resnet{depth} ×{width} {stem:?}");
            assert_eq!(net.config.feature_dim(), feat);
        }
        let bad = ResNet::new(
            &VarStore::new(Device::Cpu).root(),
            resnet(20, 1.0, Stem::Small),
        );
        assert!(bad.unwrap_err().to_string().contains("`backbone`"));
    });
}

#[test]
fn zero_init_residual_zeroes_each_blocks_last_gamma() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(2, || {
        let vs = VarStore::new(Device::Cpu);
        let cfg = ResNetConfig {
            zero_init_residual: true,
            ..resnet(50, 0.25, Stem::Small)
        };
        ResNet::new(&vs.root(), cfg).unwrap();
        let v = vs.variables();
        assert_eq!(
            v["layer1.0.bn3.weight"]
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        assert_eq!(
            v["layer1.0.bn2.weight"].mean(Kind::Float).double_value(&[]),
            1.0
        );
        assert_eq!(
            v["layer1.0.downsample.1.weight"]
                .mean(Kind::Float)
                .double_value(&[]),
            1.0
        );
    });
}

fn encoder_cfg(head: HeadKind) -> EncoderConfig {
    EncoderConfig {
        resnet: ResNetConfig {
            in_channels: 1,
            ..resnet(10, 0.125, Stem::Small)
        },
        head,
        head_hidden: 32,
        embed_dim: 16,
    }
}

#[test]
fn embeddings_are_unit_vectors_for_every_head() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(3, || {
        for head in [HeadKind::Linear, HeadKind::Mlp, HeadKind::MlpBn] {
            let vs = VarStore::new(Device::Cpu);
            let enc = Encoder::new(
                &vs.root(),
                &encoder_cfg(head),
                Compute::plain(Device::Cpu),
                &Norm::Local,
            )
            .unwrap();
            let z = enc.embed(
                &Tensor::randn([4, 1, 12, 12], (Kind::Float, Device::Cpu)),
                true,
            );
            assert_eq!(z.size(), vec![4, 16]);
            let norms = z.norm_scalaropt_dim(2, [1], false);
            assert!(norms.allclose(
                &Tensor::ones([4], (Kind::Float, Device::Cpu)),
                1e-5,
                1e-5,
                false
            ));
        }
    });
}

#[test]
fn ema_follows_the_moving_average_and_leaves_buffers_alone() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(4, || {
        let cfg = encoder_cfg(HeadKind::MlpBn);
        let q_vs = VarStore::new(Device::Cpu);
        Encoder::new(
            &q_vs.root(),
            &cfg,
            Compute::plain(Device::Cpu),
            &Norm::Local,
        )
        .unwrap();
        let mut k_vs = VarStore::new(Device::Cpu);
        Encoder::new(
            &k_vs.root(),
            &cfg,
            Compute::plain(Device::Cpu),
            &Norm::Local,
        )
        .unwrap();
        let ema = Ema::new(&mut k_vs, &q_vs).unwrap();
        assert!(!ema.is_empty());
        let (q, k) = (q_vs.variables(), k_vs.variables());
        let name = "layer1.0.conv1.weight";
        assert!(q[name].equal(&k[name]), "the key encoder starts as a copy");
        assert!(!k[name].requires_grad(), "the key encoder is frozen");
        // Set θ_q = 1, θ_k = 3 (and a BN buffer of the key to 7), then average.
        tch::no_grad(|| {
            for (n, t) in q.iter() {
                if t.requires_grad() {
                    let _ = t.shallow_clone().fill_(1.0);
                    let _ = k[n].shallow_clone().fill_(3.0);
                }
            }
            let _ = k["bn1.running_mean"].shallow_clone().fill_(7.0);
        });
        ema.update(0.9);
        let got = k[name].mean(Kind::Double).double_value(&[]);
        assert!((got - (0.9 * 3.0 + 0.1 * 1.0)).abs() < 1e-6, "{got}");
        assert_eq!(
            k["bn1.running_mean"].mean(Kind::Double).double_value(&[]),
            7.0
        );
        ema.update(0.0);
        assert!(k[name].equal(&q[name]), "m = 0 copies");
    });
}

#[test]
fn queue_keeps_the_latest_keys_in_order() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(5, || {
        let mut q = Queue::new(6, 2, 0, Device::Cpu);
        assert_eq!(q.keys.size(), vec![6, 2]);
        let norms = q.keys.norm_scalaropt_dim(2, [1], false);
        assert!(norms.allclose(
            &Tensor::ones([6], (Kind::Float, Device::Cpu)),
            1e-5,
            1e-5,
            false
        ));
        let batch = |v: f32| Tensor::full([4, 2], v as f64, (Kind::Float, Device::Cpu));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let col = |q: &Queue| Vec::<f32>::try_from(q.keys.select(1, 0)).unwrap();
        q.push(&batch(1.0), &mut rng).unwrap();
        assert_eq!(q.ptr, 4);
        assert_eq!(&col(&q)[..4], &[1.0; 4]);
        q.push(&batch(2.0), &mut rng).unwrap(); // Wraps: rows 4, 5, 0, 1.
        assert_eq!(q.ptr, 2);
        assert_eq!(col(&q), vec![2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(q.keys.size(), vec![6, 2], "the size never changes");

        // K < N: the queue becomes K random keys of the batch.
        let mut small = Queue::new(3, 1, 0, Device::Cpu);
        let keys = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([8, 1]);
        small.push(&keys, &mut rng).unwrap();
        let mut got = Vec::<f32>::try_from(small.keys.flatten(0, -1)).unwrap();
        got.sort_by(f32::total_cmp);
        got.dedup();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|v| (0.0..8.0).contains(v)));
    });
}

#[test]
fn shuffle_bn_returns_every_key_to_its_row() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(6, || {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (perm, inv) = shuffle_indices(12, &mut rng, Device::Cpu).unwrap();
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu));
        assert!(x.index_select(0, &perm).index_select(0, &inv).equal(&x));
        assert!(!x.index_select(0, &perm).equal(&x));

        // The key of image i is computed inside the (shuffled) group that holds
        // it, with that group's BN statistics, and lands back in row i.
        let vs = VarStore::new(Device::Cpu);
        let enc = Encoder::new(
            &vs.root(),
            &encoder_cfg(HeadKind::Mlp),
            Compute::plain(Device::Cpu),
            &Norm::Local,
        )
        .unwrap();
        let v = Tensor::randn([12, 1, 8, 8], (Kind::Float, Device::Cpu));
        let groups = 3;
        let keys = tch::no_grad(|| {
            enc.embed_grouped(&v.index_select(0, &perm), groups, true)
                .index_select(0, &inv)
        });
        let perm_v = Vec::<i64>::try_from(&perm).unwrap();
        for g in 0..groups as usize {
            let rows = &perm_v[4 * g..4 * g + 4];
            let idx = Tensor::from_slice(rows);
            let direct = tch::no_grad(|| enc.embed(&v.index_select(0, &idx), true));
            let back = keys.index_select(0, &idx);
            assert!(direct.allclose(&back, 1e-5, 1e-6, false), "group {g}");
        }
        // Different groups give different statistics, so not the whole-batch result.
        let whole = tch::no_grad(|| enc.embed(&v, true));
        assert!(!whole.allclose(&keys, 1e-4, 1e-5, false));
    });
}

#[test]
fn grouped_embeddings_under_bf16_and_channels_last_are_each_groups_own() {
    // One autocast region and one layout change for all the groups compute
    // what each group's own pass computes.
    eqco::base::seed::with_torch_seed(8, || {
        let vs = VarStore::new(Device::Cpu);
        let compute = Compute {
            bf16: true,
            channels_last: true,
            ..Compute::plain(Device::Cpu)
        };
        let enc = Encoder::new(
            &vs.root(),
            &encoder_cfg(HeadKind::MlpBn),
            compute,
            &Norm::Local,
        )
        .unwrap();
        compute.prepare(&vs);
        let x = Tensor::randn([12, 1, 8, 8], (Kind::Float, Device::Cpu));
        let grouped = tch::no_grad(|| enc.embed_grouped(&x, 3, true));
        assert_eq!(grouped.kind(), Kind::Float);
        let each: Vec<Tensor> = x
            .chunk(3, 0)
            .iter()
            .map(|g| tch::no_grad(|| enc.embed(g, true)))
            .collect();
        let d = (&grouped - Tensor::cat(&each, 0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-6, "max difference {d}");
    });
}

#[test]
fn channels_last_and_bf16_encoders_agree_with_the_plain_one() {
    // Draws from libtorch's generator: under its lock, from a seed.
    eqco::base::seed::with_torch_seed(7, || {
        let cfg = encoder_cfg(HeadKind::MlpBn);
        let x = Tensor::randn([8, 1, 12, 12], (Kind::Float, Device::Cpu));
        // The same weights in every encoder (tests run in parallel threads, so
        // the global seed cannot be relied on).
        let source = VarStore::new(Device::Cpu);
        Encoder::new(
            &source.root(),
            &cfg,
            Compute::plain(Device::Cpu),
            &Norm::Local,
        )
        .unwrap();
        let embed = |compute: Compute| {
            let mut vs = VarStore::new(Device::Cpu);
            let enc = Encoder::new(&vs.root(), &cfg, compute, &Norm::Local).unwrap();
            vs.copy(&source).unwrap();
            compute.prepare(&vs);
            let conv = &vs.variables()["layer1.0.conv1.weight"];
            assert_eq!(
                eqco::base::device::is_channels_last(conv),
                compute.channels_last
            );
            let z = tch::no_grad(|| enc.embed(&x, true));
            assert_eq!(z.kind(), Kind::Float, "embeddings come out in float32");
            z
        };
        let plain = embed(Compute::plain(Device::Cpu));
        let cl = embed(Compute {
            channels_last: true,
            ..Compute::plain(Device::Cpu)
        });
        let d = (&plain - &cl).abs().max().double_value(&[]);
        assert!(d < 1e-4, "same function: max difference {d}");
        let bf16 = embed(Compute {
            bf16: true,
            channels_last: true,
            ..Compute::plain(Device::Cpu)
        });
        // bfloat16 keeps 8 bits of mantissa: close, not equal.
        let diff = (&plain - &bf16).abs().max().double_value(&[]);
        assert!(diff > 0.0 && diff < 0.1, "max difference {diff}");
    });
}
