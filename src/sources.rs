//! Configuration sources. Sources only read and parse: each turns what it reads into
//! [`crate::model::Object`]s and diagnostics and hands a whole [`crate::model::ConfigSet`]
//! to the model.

pub mod file;
pub mod kube;
pub mod yaml;
