//! The registry of an [`AdapterModel`](super::AdapterModel): named modules with their configs.

use burn::prelude::*;

/// Modules of one kind (adapters, heads or fusions), each kept with its name and config, in the
/// order added. The fields are private so that a name never loses its module: every way in or
/// out goes through this type.
#[derive(Module, Debug)]
pub(crate) struct Named<B: Backend, M: Module<B>, K, C> {
    modules: Vec<M>,
    #[module(skip)]
    entries: Vec<(K, C)>,
    #[module(skip)]
    backend: std::marker::PhantomData<B>,
}

impl<
        B: Backend,
        M: Module<B>,
        K: PartialEq + Clone + std::fmt::Debug + Send,
        C: Clone + std::fmt::Debug + Send,
    > Named<B, M, K, C>
{
    pub(crate) fn new() -> Self {
        Self {
            modules: Vec::new(),
            entries: Vec::new(),
            backend: std::marker::PhantomData,
        }
    }

    /// Adds `module` under `key`; `false` (and nothing added) when the key is taken.
    pub(crate) fn insert(&mut self, key: K, config: C, module: M) -> bool {
        if self.position(&key).is_some() {
            return false;
        }
        self.entries.push((key, config));
        self.modules.push(module);
        true
    }

    /// Takes out `key`'s module and config.
    pub(crate) fn remove(&mut self, key: &K) -> Option<(C, M)> {
        let i = self.position(key)?;
        let (_, config) = self.entries.remove(i);
        Some((config, self.modules.remove(i)))
    }

    pub(crate) fn position(&self, key: &K) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == key)
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    pub(crate) fn get(&self, key: &K) -> Option<(&C, &M)> {
        let i = self.position(key)?;
        Some((&self.entries[i].1, &self.modules[i]))
    }

    pub(crate) fn module(&self, key: &K) -> Option<&M> {
        self.get(key).map(|(_, m)| m)
    }

    pub(crate) fn module_mut(&mut self, key: &K) -> Option<&mut M> {
        let i = self.position(key)?;
        Some(&mut self.modules[i])
    }

    /// The config and module of `key`, both to change (an in-place conversion such as ejecting
    /// a prefix's MLP).
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<(&mut C, &mut M)> {
        let i = self.position(key)?;
        Some((&mut self.entries[i].1, &mut self.modules[i]))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &C, &M)> {
        self.entries
            .iter()
            .zip(&self.modules)
            .map(|((k, c), m)| (k, c, m))
    }

    /// The modules in order, for what treats them all alike (checkpoints).
    pub(crate) fn modules(&self) -> &[M] {
        &self.modules
    }

    pub(crate) fn modules_mut(&mut self) -> &mut [M] {
        &mut self.modules
    }

    /// Replaces every module by `f(key, config, module)`.
    pub(crate) fn map_modules(&mut self, mut f: impl FnMut(&K, &C, M) -> M) {
        let modules = std::mem::take(&mut self.modules);
        self.modules = modules
            .into_iter()
            .zip(&self.entries)
            .map(|(m, (k, c))| f(k, c, m))
            .collect();
    }
}
