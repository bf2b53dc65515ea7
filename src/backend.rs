//! The Burn backends compiled into this build, and the one place the CLI picks among them.
//!
//! Adding a backend is one cargo feature (`Cargo.toml`) and one line in the `backends!` list
//! below: the line names the feature, the `--backend` value, the variant and the Burn type. The
//! macro makes the alias, the CLI choice and the dispatch arm.

use sinew_backbone::FusedOps;

/// Work that runs on whichever backend the user picked.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B`, on its default device.
    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<Self::Output>;
}

macro_rules! backends {
    ($($feature:literal => $variant:ident: $alias:ident = $ty:ty),+ $(,)?) => {
        $(
            #[cfg(feature = $feature)]
            #[doc = concat!("The `", $feature, "` backend.")]
            pub type $alias = $ty;
        )+

        /// A backend compiled into this build (`--backend`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum BackendKind {
            $(
                #[cfg(feature = $feature)]
                #[doc = concat!("`", $feature, "`")]
                #[value(name = $feature)]
                $variant,
            )+
        }

        impl BackendKind {
            /// Runs `job` on this backend.
            pub fn run<J: BackendJob>(self, job: J) -> anyhow::Result<J::Output> {
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        Self::$variant => job.run::<$alias>(&Default::default()),
                    )+
                }
            }

            /// The `--backend` value of this backend.
            pub fn name(self) -> &'static str {
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        Self::$variant => $feature,
                    )+
                }
            }

            /// The backends compiled in, in the order listed.
            pub fn compiled() -> Vec<Self> {
                vec![$( #[cfg(feature = $feature)] Self::$variant, )+]
            }

            /// flex when compiled in (the fastest CPU backend here), else the first compiled.
            pub fn fastest_cpu() -> Self {
                let compiled = Self::compiled();
                compiled
                    .iter()
                    .copied()
                    .find(|b| b.name() == "flex")
                    .unwrap_or(compiled[0])
            }
        }
    };
}

backends! {
    "ndarray" => Ndarray: NdArrayBackend = burn::backend::NdArray<f32>,
    "flex" => Flex: FlexBackend = burn::backend::Flex,
    "wgpu" => Wgpu: WgpuBackend = burn::backend::Wgpu,
}

#[cfg(not(any(feature = "ndarray", feature = "flex", feature = "wgpu")))]
compile_error!("enable at least one backend feature: ndarray, flex or wgpu");
