//! Non-linearities by the names AdapterHub and HuggingFace configs use.

use burn::prelude::*;
use burn::tensor::activation;
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedOps;

/// An activation named as in HF's `get_activation` (`relu`, `swish`/`silu`, `gelu`, `gelu_new`,
/// `tanh`, `sigmoid`, `leakyrelu`); an empty name means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Activation {
    /// `relu`.
    Relu,
    /// `swish` / `silu`: x·σ(x).
    Silu,
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `tanh`.
    Tanh,
    /// `sigmoid`.
    Sigmoid,
    /// `leakyrelu`, slope 0.01 (PyTorch's default).
    LeakyRelu,
    /// No activation.
    Identity,
}

impl TryFrom<String> for Activation {
    type Error = crate::ConfigError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => Self::Relu,
            "swish" | "silu" => Self::Silu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "tanh" => Self::Tanh,
            "sigmoid" => Self::Sigmoid,
            "leakyrelu" => Self::LeakyRelu,
            "" | "none" | "linear" | "identity" => Self::Identity,
            other => {
                return Err(crate::ConfigError::invalid(
                    "activation",
                    format!("`{other}` is unknown"),
                ))
            }
        })
    }
}

impl From<Activation> for String {
    fn from(a: Activation) -> String {
        match a {
            Activation::Relu => "relu",
            Activation::Silu => "swish",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::LeakyRelu => "leakyrelu",
            Activation::Identity => "",
        }
        .into()
    }
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward<B: FusedOps, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
            Self::Gelu => sinew_backbone::kernels::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Tanh => x.tanh(),
            Self::Sigmoid => activation::sigmoid(x),
            Self::LeakyRelu => activation::leaky_relu(x, 0.01),
            Self::Identity => x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Tolerance;

    /// Each activation at x = -1 and 2 against its closed form.
    #[test]
    fn closed_forms() {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        type ClosedForm = fn(f64) -> f64;
        let cases: [(&str, ClosedForm); 5] = [
            ("relu", |v| v.max(0.0)),
            ("swish", |v| v / (1.0 + (-v).exp())),
            ("tanh", f64::tanh),
            ("leakyrelu", |v| if v > 0.0 { v } else { 0.01 * v }),
            ("gelu_new", |v| {
                0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
            }),
        ];
        let x = Tensor::<NdArray, 1>::from_floats([-1.0, 2.0], &Default::default());
        for (name, f) in cases {
            let act = Activation::try_from(name.to_string()).unwrap();
            let expected = [f(-1.0) as f32, f(2.0) as f32];
            act.forward(x.clone())
                .into_data()
                .assert_approx_eq::<f32>(&TensorData::from(expected), Tolerance::absolute(1e-6));
        }
        let expected = [sig(-1.0) as f32, sig(2.0) as f32];
        Activation::Sigmoid
            .forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from(expected), Tolerance::absolute(1e-6));
        assert!(Activation::try_from("mish".to_string())
            .unwrap_err()
            .to_string()
            .contains("mish"));
    }
}
