//! Account changes by the account's owner: display name and password.

use super::validate;
use super::{Auth, AuthError};
use crate::store::{self, User, UserChanges};

impl Auth {
    /// Changes the display name.
    pub async fn change_display_name(&self, user_id: &str, name: &str) -> Result<User, AuthError> {
        let name = validate::normalize_display_name(name)?;
        self.store
            .update_user(
                user_id,
                UserChanges {
                    display_name: Some(name),
                    ..Default::default()
                },
            )
            .await?
            .ok_or(AuthError::InvalidToken)
    }

    /// Changes the password. An account that has one must give it as
    /// `current`; every other session of the user is revoked (and its live
    /// connections closed), `keep_session` stays.
    pub async fn change_password(
        &self,
        user_id: &str,
        keep_session: Option<&str>,
        current: Option<&str>,
        new_password: &str,
    ) -> Result<User, AuthError> {
        validate::validate_new_password(new_password)?;
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if let Some(hash) = user.password_hash.as_deref() {
            let current = current.unwrap_or_default();
            if current.len() > validate::MAX_PASSWORD_BYTES
                || !self.passwords.verify(current, Some(hash)).await?
            {
                return Err(AuthError::WrongPassword);
            }
        }
        let hash = self.passwords.hash(new_password).await?;
        let user = self
            .store
            .update_user(
                user_id,
                UserChanges {
                    password_hash: Some(hash),
                    ..Default::default()
                },
            )
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let revoked = self
            .store
            .revoke_other_sessions(user_id, keep_session, store::now())
            .await?;
        for session_id in revoked {
            self.remember_revoked(&session_id);
            self.publish_revoked(&session_id).await;
        }
        Ok(user)
    }
}
