// Package deploy holds no code: its tests check the deployment files beside
// it (systemd unit, container, Compose demo, Helm chart, collector configs,
// release build) against the real tools where this machine has them.
package deploy
